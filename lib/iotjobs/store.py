# Small JSON files that survive power loss.
#
# A save writes a temporary file, flushes it, then renames it over the old one. On LittleFS (the
# ESP32 default filesystem) and on POSIX a rename is atomic, so after a power cut the file holds
# either the old or the new content, never a mix. A leftover temporary file is ignored.
import json
import os


def load(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError:
        return default
    except ValueError:
        # Cannot happen through save(); a file corrupted some other way is as good as none,
        # and the caller decides what "none" means (the agent asks the service).
        return default


def save(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.flush()
    os.rename(tmp, path)


def remove(path):
    try:
        os.remove(path)
    except OSError:
        pass
