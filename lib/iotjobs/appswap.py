# Application-file sets swapped atomically, with the previous set kept for rollback.
#
#   app/       the live application (on sys.path)
#   app.new/   a set being staged by a bundle job; complete once it holds .complete
#   app.old/   the previous set, until the new one passed its self-test
#
# Every change is one or two renames (atomic on LittleFS and POSIX). recover(), run by boot.py
# before anything imports the application, finishes or undoes a swap that a reset cut short.
import os

_DONE = "/.complete"
_VERSION = "/.version"


def exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False


def rmtree(p):
    if not exists(p):
        return
    if os.stat(p)[0] & 0x4000:  # a directory
        for name in os.listdir(p):
            rmtree(p + "/" + name)
        os.rmdir(p)
    else:
        os.remove(p)


def makedirs(p):
    # mkdir -p for a path relative to the current directory.
    cur = ""
    for part in p.split("/"):
        cur = part if not cur else cur + "/" + part
        if not exists(cur):
            os.mkdir(cur)


def version(app):
    try:
        with open(app + _VERSION) as f:
            return f.read().strip() or "unknown"
    except OSError:
        return "none"


def stage_begin(app):
    rmtree(app + ".new")
    os.mkdir(app + ".new")
    return app + ".new"


def stage_done(app, ver):
    with open(app + ".new" + _VERSION, "w") as f:
        f.write(ver or "unknown")
    with open(app + ".new" + _DONE, "w") as f:
        f.write("1")


def swap(app):
    # app -> app.old, app.new -> app. Between the two renames there is no app/; recover()
    # completes the swap because app.new is marked complete.
    rmtree(app + ".old")
    if exists(app):
        os.rename(app, app + ".old")
    os.rename(app + ".new", app)


def confirm(app):
    rmtree(app + ".old")
    try:
        os.remove(app + _DONE)
    except OSError:
        pass


def rollback(app):
    # Back to the previous set (or to none, if there was none before).
    if exists(app):
        os.rename(app, app + ".bad")
    if exists(app + ".old"):
        os.rename(app + ".old", app)
    rmtree(app + ".bad")


def recover(app):
    if not exists(app):
        if exists(app + ".new" + _DONE):
            os.rename(app + ".new", app)  # the swap was cut between its renames
        elif exists(app + ".old"):
            os.rename(app + ".old", app)
    if exists(app + ".new"):
        rmtree(app + ".new")  # an unfinished staging: the job starts it again
    rmtree(app + ".bad")
