# An app slot (an esp32.Partition, which only iotjobs.board creates) as the update handlers use
# it. Loaded with the first slot a job asks the board for, and unloaded with the job's code.


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
