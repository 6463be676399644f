"""Splits the cold time to first event of each server into phases, from a syscall trace.

Read by `benches/profile.sh cold`: argv[1] is the kernel trace (tracefs, syscall enter and
exit events of the servers' threads only, monotonic clock), argv[2] a file of lines
`NAME TID...` (the threads of each server). For each request a server relays, it finds:

  wake      epoll_wait's return -> the request read (recvfrom, 55-70 bytes: the bench's GET)
  request   that read's return -> the first write on another socket (the upstream request)
  response  the first read of more than 200 bytes back on that socket (head and first
            event) -> the first write on the client's socket

and prints each phase's median, in microseconds (the trace clock's resolution is 1 us).
"""

import re
import statistics
import sys

EVENT = re.compile(r"-(\d+)\s+\[\d+\]\s+\S+\s+([\d.]+): (sys_\w+)(\(.*\)| -> (0x[0-9a-f]+))")
FD = re.compile(r"fd: (0x[0-9a-f]+|\d+)")


def main(trace_path, threads_path):
    server_of = {}
    order = []
    for line in open(threads_path):
        name, *tids = line.split()
        order.append(name)
        for tid in tids:
            server_of[int(tid)] = name
    phases = {name: {"wake": [], "request": [], "response": []} for name in order}
    state = {name: {"step": 0} for name in order}
    read_fd = {}
    for line in open(trace_path):
        m = EVENT.search(line)
        if not m or int(m.group(1)) not in server_of:
            continue
        tid, at, call = int(m.group(1)), float(m.group(2)) * 1e6, m.group(3)
        name = server_of[tid]
        s, p = state[name], phases[name]
        if m.group(5) is None:  # a syscall's entry
            fd = FD.search(m.group(4))
            fd = int(fd.group(1), 0) if fd else None
            if call == "sys_recvfrom":
                read_fd[tid] = fd
            elif call == "sys_writev" and s["step"] == 1 and fd != s["client"]:
                p["request"].append(at - s["at"])
                s.update(step=2, upstream=fd)
            elif call == "sys_writev" and s["step"] == 3 and fd == s["client"]:
                p["response"].append(at - s["at"])
                s["step"] = 0
            continue
        returned = int(m.group(5), 16)
        if call == "sys_epoll_wait":
            s["woke"] = at
        elif call == "sys_recvfrom":
            fd = read_fd.get(tid)
            if s["step"] == 0 and 55 <= returned <= 70:
                p["wake"].append(at - s.get("woke", at))
                s.update(step=1, at=at, client=fd)
            elif s["step"] == 2 and fd == s["upstream"] and 200 < returned < 1 << 16:
                s.update(step=3, at=at)
    print(f"{'server':10} {'requests':>8} {'wake':>6} {'request':>8} {'response':>9} {'sum':>6}  (us, medians)")
    for name in order:
        p = phases[name]
        if not p["response"]:
            print(f"{name:10} no complete request in the trace")
            continue
        medians = [statistics.median(p[k]) for k in ("wake", "request", "response")]
        print(f"{name:10} {len(p['response']):8d} {medians[0]:6.1f} {medians[1]:8.1f} {medians[2]:9.1f} {sum(medians):6.1f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
