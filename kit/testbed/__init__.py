"""The lab: an emulated Raspberry Pi, real sshd "devices" on 127.0.0.1, network namespaces and a
delay proxy. Used by tests, benchmarks and `edgekit emulate-pi`; product code never imports it."""
