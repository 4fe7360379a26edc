# The application's entry point: iotjobs.app.run() (main.py) imports this module from app/ and
# runs main(agent) as a task beside the agent's.
from sensor import main  # noqa: F401
