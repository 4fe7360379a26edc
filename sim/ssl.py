# Newer umqtt.simple releases import `ssl`; same stand-in as ussl (see there).
from ussl import *  # noqa: F403
