#!/usr/bin/env python3
"""Gives a fresh clone's files the modification times they had in the last
run built with the same build folder, where their content is the same.

cargo decides that a workspace crate is out of date when one of its source
files is newer than the start of its last build. Every file of a fresh clone
is new, so without this every workspace crate is built again on every CI run,
changed or not. With it, only what changed since the last run is built again.

Usage: scripts/source-mtimes.py RECORD

Run it from the clone's top folder, holding the build folder's lock, before
anything is built. RECORD (a file kept beside the build folder) holds, for
each file git tracks, a hash of its content and the time it was given; this
script replaces it with this clone's.

- A file whose content is the same as recorded gets the recorded time back.
  Every build that started after that time was of this content: the record
  was made by the run that gave the file that time, and every run since kept
  the same content for it (one of other content would have replaced the
  record).
- A changed or new file is given the time now, taken under the lock, which
  is later than the start of every build in the folder.
- A record that is empty or was not written whole (a run that could not keep
  it leaves it empty: .ci/run) restores nothing: every file gets the time now.
- With no record file at all (the first run on a folder that CI's runs
  filled before this script was in use), a file is given the time of the
  last commit that changed it on the first-parent history. That is sound
  when every commit after those that the folder's builds were of was made
  after those builds started: so it is where CI builds the newest commit of
  one branch after it is made, and no commit is dated back. An empty folder
  holds no build to be taken for another.

Only CI's runs may build in that folder: a build of other sources there
(uncommitted changes, another branch) would be taken for theirs.
"""

import hashlib
import os
import subprocess
import sys
import time


def git(*args):
    """git's output; its errors go to this script's standard error."""
    return subprocess.run(
        ["git", "-c", "color.ui=never", *args], check=True, stdout=subprocess.PIPE
    ).stdout


def tracked():
    """The paths of the regular files git tracks here."""
    paths = []
    for entry in git("ls-files", "-s", "-z", "--full-name").split(b"\0"):
        if not entry:
            continue
        meta, path = entry.split(b"\t", 1)
        # Symbolic links and submodules have no content of their own here.
        if meta.split()[0] in (b"100644", b"100755"):
            paths.append(os.fsdecode(path))
    return paths


def content_hash(path):
    """A hash of the bytes on disk (what cargo builds), not of git's blob."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def commit_times(paths):
    """Path -> time (ns) of the last first-parent commit that changed it."""
    wanted = set(paths)
    times = {}
    # -z: "\0<time>\0\n<path>\0<path>\0...\0" per commit; a merge lists what
    # it changed against its first parent (-m --first-parent).
    out = git(
        "log", "-z", "--first-parent", "-m", "--name-only", "--no-renames",
        "--no-show-signature", "--format=%x00%ct", "HEAD",
    )
    when = None
    after_gap = True
    first_path = False
    for token in out.split(b"\0"):
        if not token:
            after_gap = True
            continue
        if after_gap:
            when = int(token) * 1_000_000_000
            after_gap = False
            first_path = True
            continue
        # The first path after a time follows the format's line end.
        if first_path and token.startswith(b"\n"):
            token = token[1:]
        first_path = False
        path = os.fsdecode(token)
        if path in wanted and path not in times:
            times[path] = when
    return times


def read_record(record):
    """Path -> (content hash, time in ns), or None when there is no record."""
    try:
        with open(record, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    kept = {}
    for entry in data.split(b"\0"):
        if not entry:
            continue
        parts = entry.split(b" ", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            # Not a record this script wrote whole: nothing is restored.
            return {}
        kept[os.fsdecode(parts[2])] = (parts[0].decode(), int(parts[1]))
    return kept


def main():
    if len(sys.argv) != 2:
        print("usage: scripts/source-mtimes.py RECORD", file=sys.stderr)
        return 2
    record = os.path.abspath(sys.argv[1])
    os.chdir(git("rev-parse", "--show-toplevel").rstrip(b"\n"))
    paths = tracked()
    kept = read_record(record)
    first = commit_times(paths) if kept is None else {}
    now = time.time_ns()
    restored = 0
    entries = []
    for path in sorted(paths):
        digest = content_hash(path)
        if kept is None:
            ns = first.get(path, now)
        elif kept.get(path, (None, 0))[0] == digest:
            ns = kept[path][1]
        else:
            ns = now
        if ns != now:
            restored += 1
        os.utime(path, ns=(ns, ns), follow_symlinks=False)
        entries.append(f"{digest} {ns} ".encode() + os.fsencode(path))
    # Written whole, then renamed: an interrupted run leaves the old record.
    with open(record + ".new", "wb") as f:
        f.write(b"\0".join(entries) + b"\0")
    os.replace(record + ".new", record)
    how = " (no record yet: from their last commits)" if kept is None else ""
    print(f"source times: {restored} of {len(paths)} files as last built{how}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
