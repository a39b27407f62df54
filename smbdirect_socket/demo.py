"""``python -m smbdirect_socket.demo``: the demo, which lives in :mod:`smbdirect_socket.smb.demo`."""

if __name__ == "__main__":
    from .smb.demo import main

    main()
