#!/usr/bin/env python3
"""Run a command in its own process group and SIGKILL the whole group (ansible-playbook and its
workers, like a controller that dies) as soon as a watcher command exits 0.

    kill_when.py --result out.json --log run.log --watch 'ssh ... "while ...; do sleep 0.05; done"' -- ansible-playbook ...

Writes {killed, rc, seconds, watch_rc} to --result; exits 0 whatever happened (the caller asserts).
"""
import argparse
import json
import os
import signal
import subprocess
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--result", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--watch", required=True, help="shell command that exits 0 when it is time to kill")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    start = time.monotonic()
    with open(args.log, "w", encoding="utf-8") as log:
        run = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        watch = subprocess.Popen(args.watch, shell=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        killed = False
        while run.poll() is None and time.monotonic() - start < args.timeout:
            if watch.poll() is not None:
                if watch.returncode == 0:
                    os.killpg(run.pid, signal.SIGKILL)
                    killed = True
                break
            time.sleep(0.02)
        if run.poll() is None and not killed:
            os.killpg(run.pid, signal.SIGKILL)
        rc = run.wait()
        if watch.poll() is None:
            watch.kill()
        watch_rc = watch.wait()
    with open(args.result, "w", encoding="utf-8") as out:
        json.dump({"killed": killed, "rc": rc, "seconds": round(time.monotonic() - start, 1), "watch_rc": watch_rc}, out)


if __name__ == "__main__":
    main()
