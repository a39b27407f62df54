"""SMB beside the socket: the gateway, SMB2 parsing, client size fitting, a private Samba, the demo.

Nothing in the socket core imports this package.
"""
