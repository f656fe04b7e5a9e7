#!/usr/bin/env python3
"""Gives a fresh clone's files the modification times they had in the last
clone built with the same build folder, where their content is the same.

cargo decides that a workspace crate is out of date when one of its source
files is newer than its last build. Every file of a fresh clone is new, so
without this every workspace crate is built again on every CI run, changed or
not. With it, only what changed since the last run is built again.

Usage: scripts/source-mtimes.py RECORD

RECORD (a file kept beside the build folder) holds, for each file git tracks,
its content's hash and the time it was given; this script replaces it with
the files of this clone. A file keeps its recorded time only when its content
is the same as recorded; a changed or new file keeps the time the clone gave
it, which is newer than any build. This holds whatever happened to the
history in between: a build of other content for a path can only have run
after that path was last recorded with other content, and that record then
gave it a newer time. With no record yet (the first run), a file is given
the time of the last commit that changed it: every build the folder holds
then comes from an earlier checkout of the same linear history.
"""

import os
import subprocess
import sys


def git(*args):
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


def tracked():
    """Path -> content hash of every regular file git tracks here."""
    files = {}
    for line in git("ls-files", "-s", "-z").split("\0"):
        if not line:
            continue
        meta, path = line.split("\t", 1)
        mode, blob, _stage = meta.split()
        # Symbolic links and submodules have no content of their own here.
        if mode in ("100644", "100755"):
            files[path] = blob
    return files


def commit_times(paths):
    """Path -> time (ns) of the last commit that changed it, for those in paths."""
    times = {}
    when = None
    for line in git("log", "--format=@%ct", "--name-only", "--no-renames", "HEAD").splitlines():
        if line.startswith("@"):
            when = int(line[1:]) * 1_000_000_000
        elif line and line not in times and line in paths:
            times[line] = when
    return times


def read_record(record):
    """Path -> (content hash, time in ns), or None when there is no record."""
    try:
        with open(record, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    kept = {}
    for line in lines:
        parts = line.split(" ", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            # A record this script did not write whole: no file keeps a time.
            return {}
        blob, ns, path = parts
        kept[path] = (blob, int(ns))
    return kept


def main():
    if len(sys.argv) != 2:
        print("usage: scripts/source-mtimes.py RECORD", file=sys.stderr)
        return 2
    record = sys.argv[1]
    files = tracked()
    kept = read_record(record)
    first = commit_times(files) if kept is None else {}
    restored = 0
    lines = []
    for path, blob in sorted(files.items()):
        ns = None
        if kept is None:
            ns = first.get(path)
        elif kept.get(path, (None, None))[0] == blob:
            ns = kept[path][1]
        if ns is not None:
            os.utime(path, ns=(ns, ns), follow_symlinks=False)
            restored += 1
        else:
            ns = os.stat(path, follow_symlinks=False).st_mtime_ns
        lines.append(f"{blob} {ns} {path}")
    # Written whole, then renamed: an interrupted run leaves the old record.
    with open(record + ".new", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(record + ".new", record)
    print(f"source times: {restored} of {len(files)} files as last built"
          + (" (first run: from their last commits)" if kept is None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
