"""The registry in etcd: key layout, runtime registration and the router's cache."""
