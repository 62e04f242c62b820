"""The one gate for every path the project opens or writes by name: a regular file, or nothing.

    with paths.open_regular(path, "a checkpoint", "pass the model.pt a run wrote") as f: ...
    paths.check_target(path, "a picture", "pass another --out")  # before writing a new file there

A FIFO opened to read waits for a writer forever, a folder opened to append is an IsADirectoryError,
a socket cannot be opened at all, a device may be endless: each is refused here in one line that
says what the path is and what to pass instead. The file is opened without blocking (O_NONBLOCK,
which a FIFO would otherwise need) and what was opened is checked again on its descriptor (fstat),
so a name swapped for a FIFO between the look and the open is refused too. A size bound is checked
on that same descriptor before a byte is read: a sparse file of 20 GB is refused as fast as a 1 KB one.
"""
import os
import stat

from machinery.cli import UserError, shown


def kind(path):
    """What path is, when it is not a regular file: 'a folder', 'a FIFO', 'a socket', 'a device', 'a
    symbolic link to X, which does not exist'; None for a regular file (or a link to one) or no file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return f"a symbolic link to {shown(os.readlink(path))}, which does not exist"
        return None
    except OSError as e:  # a loop of links, a name too long, a folder on the way that is a file...
        return f"a path that cannot be looked at ({e.strerror or e})"
    return described(mode)


def described(mode):
    if stat.S_ISREG(mode):
        return None
    return ("a folder" if stat.S_ISDIR(mode) else "a FIFO (a named pipe)" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a regular file")


def refusal(path, what_it_is, what, hint, named=True):
    """The one line: 'PATH is a FIFO (a named pipe), not a regular file, so not a checkpoint: HINT' (without
    'PATH is' when not named)."""
    line = f"{what_it_is}, not a regular file{', so not ' + what if what else ''}: {hint}"
    return f"{shown(os.path.abspath(path))} is {line}" if named else line


def check_target(path, what, hint, named=True):
    """UserError unless path is a regular file or no file at all (a name a new file may take)."""
    found = kind(path)
    if found:
        raise UserError(refusal(path, found, what, hint, named))


def open_regular(path, what, hint, max_bytes=None, larger="", named=True, flags=os.O_RDONLY):
    """The regular file at path as a binary file object, opened without blocking (flags: os.O_RDONLY, or
    O_WRONLY with O_APPEND and O_CREAT for a lock file); UserError if it is anything else, is missing
    (unless flags has O_CREAT), or is over max_bytes by its descriptor's size: then the line gives its
    size and `larger` (what the bound is, and what to do)."""
    found = kind(path)
    if found:
        raise UserError(refusal(path, found, what, hint, named))
    try:
        fd = os.open(path, flags | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UserError(f"{shown(os.path.abspath(path)) + ': ' if named else ''}no such file; {hint}") from None
    except OSError as e:  # swapped meanwhile for a FIFO with no writer (ENXIO), a folder (EISDIR)...
        found = kind(path)
        raise UserError(refusal(path, found, what, hint, named) if found else
                        f"{shown(os.path.abspath(path)) + ': ' if named else ''}cannot open it "
                        f"({e.strerror or e}); {hint}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UserError(refusal(path, described(info.st_mode), what, hint, named))
        if max_bytes is not None and info.st_size > max_bytes:
            size = size_text(info.st_size)  # in bytes where the rounded size would look like the bound's
            size = f"{info.st_size:,} bytes" if size == size_text(max_bytes) else size
            raise UserError(f"{shown(os.path.abspath(path)) + ': ' if named else ''}{size}, "
                            f"{larger or f'more than {size_text(max_bytes)}; {hint}'}")
        os.set_blocking(fd, True)
        writing = flags & (os.O_WRONLY | os.O_RDWR)
        return os.fdopen(fd, ("ab" if flags & os.O_APPEND else "wb") if writing else "rb", buffering=-1)
    except BaseException:
        os.close(fd)
        raise


def size_text(size):
    """'20 GB', '64 MB', '4.2 KB', '12 bytes'."""
    for unit, power in (("GB", 30), ("MB", 20), ("KB", 10)):
        if size >= 2**power:
            value = size / 2**power
            return f"{value:.1f} {unit}" if value < 10 else f"{value:,.0f} {unit}"
    return f"{size} bytes"
