"""EdgeKit device agent: runs on the device with the standard library, numpy and one runtime.

It never imports kit/; the kit copies this folder to each device (versioned) and runs
``python3 -m device_agents <verb> ...``, reading one JSON document from stdout.
"""

AGENT_VERSION = "0.1.0"
SCHEMA_VERSION = 1
