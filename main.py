# Runs the jobs agent (lib/iotjobs/app.py); config.json next to this file configures it.
from iotjobs import app

app.run()
