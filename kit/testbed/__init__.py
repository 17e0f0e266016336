"""The lab: an emulated Raspberry Pi (pi/), real sshd "devices" on 127.0.0.1 (sshd.py), network
namespaces with veth links (netns.py), a delaying TCP proxy (delay_proxy.py), small signed test
bundles (bundles.py) and free ports (ports.py). Used by tests, benchmarks and `edgekit emulate-pi`;
product code (kit/devices, kit/fleet) never imports it."""
