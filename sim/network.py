# Unix-port stand-in for MicroPython's `network` module: the PC is always on the network, so a
# station connects at once. Enough of WLAN for the agent's connect_network().
from micropython import const

STA_IF = const(0)
AP_IF = const(1)
STAT_IDLE = const(0)
STAT_CONNECTING = const(1)
STAT_GOT_IP = const(1010)


class WLAN:
    def __init__(self, interface=STA_IF):
        self._active = False
        self._ssid = None

    def active(self, flag=None):
        if flag is not None:
            self._active = bool(flag)
        return self._active

    def connect(self, ssid=None, key=None):
        if not self._active:
            raise OSError("wifi: interface not active")
        self._ssid = ssid

    def disconnect(self):
        self._ssid = None

    def isconnected(self):
        return self._active

    def status(self, param=None):
        return STAT_GOT_IP if self._active else STAT_IDLE

    def ifconfig(self, conf=None):
        return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")
