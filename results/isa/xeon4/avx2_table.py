import re, sys
O = sys.argv[1]
RUNS = [int(r) for r in sys.argv[2:]] or [1, 2]
def parse(f):
    d = {}; T = None; layer = None
    for line in open(f):
        m = re.match(r"(\w+) N=.*?, (\d) thread", line)
        if m: layer, T = m.group(1), int(m.group(2)); continue
        m = re.match(r"\s+direct\s+([\d.]+)\s+\S+\s+\S+\s+(?:\S+\s+)?([\d.]+)", line)
        if m and layer:
            parts = line.split()
            fwd = float(parts[1]); bwd = float(parts[5] if '%' in parts[4] and len(parts) > 8 else parts[4])
            d[(layer, T)] = (fwd, bwd)
    return d
def lesser(fs):
    ds = [parse(f) for f in fs]
    return {k: min((d[k] for d in ds), key=sum) for k in ds[0]}
old = lesser([f"{O}/before_direct_{i}.log" for i in RUNS])
new = lesser([f"{O}/after_avx2_direct_{i}.log" for i in RUNS])
print("layer, threads | c0fcc04 fwd/bwd ms | AVX2 now | old/new fwd+bwd | forward alone   (the lesser of the alternated runs given)")
for k in sorted(old, key=lambda k: (k[1], k[0])):
    o, n = old[k], new[k]
    print(f"{k[0]}, {k[1]} | {o[0]:.2f} / {o[1]:.2f} | {n[0]:.2f} / {n[1]:.2f} | {sum(o)/sum(n):.2f}x | {o[0]/n[0]:.2f}x")
