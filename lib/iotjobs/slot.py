# An app slot (an esp32.Partition, which only iotjobs.board creates) as the update handlers use
# it, and the app descriptor in an image's header. Loaded with the first slot a job asks the
# board for, and unloaded with the job's code.
from micropython import const

_DESC_OFFSET = const(0x20)  # esp_app_desc_t: after the 24-byte image and 8-byte segment header
_DESC_MAGIC = const(0xABCD5432)


class Slot:
    # One app slot as the handlers use it, so that none of them knows the partition API.
    # Blocks are read and written with the firmware's own methods (bound once here: a
    # download's hot loop calls them with no frame in between); writeblocks erases before it
    # programs.
    def __init__(self, part):
        self._p = part
        i = part.info()
        self.size = i[3]
        self.label = i[4]
        self.readblocks = part.readblocks
        self.writeblocks = part.writeblocks

    def erase(self):
        # The first block only: what makes a partial or refused image unbootable. Best effort.
        try:
            self._p.ioctl(6, 0)
        except OSError:
            pass

    def activate(self):
        # Boots this slot next, once, pending confirmation; OSError when the bootloader would
        # refuse the image (ESP-IDF checks its header, checksum and appended hash).
        self._p.set_boot()

    def confirm(self):
        # The running image stays: no rollback at the next reset.
        type(self._p).mark_app_valid_cancel_rollback()

    def rollback(self):
        # On the running slot: the other slot (the previous image) boots next.
        self._p.get_next_update().set_boot()


def app_version(part):
    # Reads the header and the descriptor's version only (80 bytes, not a whole block).
    buf = bytearray(_DESC_OFFSET + 48)
    part.readblocks(0, buf, 0)
    magic = buf[_DESC_OFFSET] | buf[_DESC_OFFSET + 1] << 8
    magic |= buf[_DESC_OFFSET + 2] << 16 | buf[_DESC_OFFSET + 3] << 24
    if buf[0] != 0xE9 or magic != _DESC_MAGIC:
        return "unknown"
    raw = bytes(buf[_DESC_OFFSET + 16 :])
    end = raw.find(b"\0")
    return (raw if end < 0 else raw[:end]).decode()


def app_secure_version(part):
    # The descriptor's secure_version (anti-rollback counter); 0 without a descriptor.
    buf = bytearray(_DESC_OFFSET + 8)
    part.readblocks(0, buf, 0)
    d = _DESC_OFFSET
    if (
        buf[0] != 0xE9
        or buf[d] | buf[d + 1] << 8 | buf[d + 2] << 16 | buf[d + 3] << 24 != _DESC_MAGIC
    ):
        return 0
    return buf[d + 4] | buf[d + 5] << 8 | buf[d + 6] << 16 | buf[d + 7] << 24
