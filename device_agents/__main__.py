import sys

from device_agents.agent import main

sys.exit(main())
