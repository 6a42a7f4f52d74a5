"""Everything that touches processes, sockets and hosts: MPI transport, pipeline runtime, emulation,
inventory, SSH provisioning, launch and the command-line interface."""
