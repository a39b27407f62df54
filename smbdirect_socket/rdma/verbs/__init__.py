"""The verbs provider: real RDMA devices through pyverbs and rdma_cm."""
