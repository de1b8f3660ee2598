"""nodevisor runtime plugin: each node is a libvirt virtual machine."""
