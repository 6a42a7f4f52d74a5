"""Fixtures of tests/cluster/ that live in conftest_netns.py: no_network (a test that must not touch the
network) and emulated_cluster (Pis as network namespaces with sshd). Defined there, offered here, so a
test asks for them by name without importing them."""
from .conftest_netns import emulated_cluster, netns_head, no_network  # noqa: F401 - fixtures
