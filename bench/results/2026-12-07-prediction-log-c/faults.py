"""One closed-loop step (convnet, or the model in $MODEL; c=64, 8 s) against a server
with the prediction log off or at 100 %; prints req/s, server CPU per request, minor
page faults per request and, per thread, CPU and faults per request over 6 s in the
middle of the step (from /proc). Usage (repo root): python faults.py REPO off|100%
[serve flags]. The experiment patch's TG_EXP variable picks the writer's variant."""
import sys, os, time, tempfile, threading, shutil
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from bench.serve_step import Server, closed_loop
def threads(pid):
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            s = open(f"/proc/{pid}/task/{t}/stat").read()
        except OSError: continue
        name = s[s.index("(")+1:s.rindex(")")]
        f = s[s.rindex(")")+2:].split()
        out[(t,name)] = (int(f[7]), int(f[11]) + int(f[12]))  # minflt, utime+stime ticks
    return out
def proc(pid):
    s = open(f"/proc/{pid}/stat").read(); f = s[s.rindex(")")+2:].split()
    return int(f[7]), int(f[11])+int(f[12])
repo = Path(sys.argv[1]); configs = sys.argv[2].split(","); extra = sys.argv[3:]
for cfg in configs:
    logs = Path(tempfile.mkdtemp(prefix="tg-plog-"))
    flags = [] if cfg == "off" else ["--prediction-log-dir", str(logs)]
    srv = Server(["--model-repository", str(repo), "--metrics-port", "0", *flags, *extra])
    pid = srv.proc.pid
    res = {}
    def sample():
        time.sleep(3)
        res["a"] = (threads(pid), proc(pid), time.time())
        time.sleep(6)
        res["b"] = (threads(pid), proc(pid), time.time())
    th = threading.Thread(target=sample); th.start()
    rps, cpu = closed_loop(srv, os.environ.get("MODEL", "convnet"), 64, 8, 2)
    th.join()
    srv.stop(); shutil.rmtree(logs, ignore_errors=True)
    (ta, pa, t0), (tb, pb, t1) = res["a"], res["b"]
    nreq = rps * (t1 - t0)
    print(f"{cfg}: {rps:.0f} req/s cpu {cpu:.0f} us/req minflt/req {(pb[0]-pa[0])/nreq:.2f}")
    agg = {}
    for k in tb:
        if k in ta:
            n = k[1]+':'+k[0]
            d = agg.setdefault(n, [0, 0])
            d[0] += tb[k][0]-ta[k][0]; d[1] += tb[k][1]-ta[k][1]
    for n, (mf, ticks) in sorted(agg.items(), key=lambda x: -x[1][1])[:7]:
        if ticks: print(f"   {n:20s} cpu {ticks*1e4/nreq:6.1f} us/req  minflt/req {mf/nreq:.2f}")
