#!/usr/bin/env bash
# The prepared GPU check (issue 25): one script for a one-GPU machine with
# CUDA and PyTorch but no Rust, under 8 minutes on an H200. It runs
#   1. `check-step`: one BYOL forward and backward on the GPU and on the CPU
#      from the same weights and views (small encoder, ResNet-18), loss and
#      every gradient within 1e-3;
#   2. `bench step` of byol-rs in f32 and bf16 against
#      bench/torch_byol_step.py on the same GPU (PyTorch eager f32, and
#      autocast bf16 with channels_last), ResNet-18 CIFAR stem at batch 256
#      and ResNet-50 at 224 px batch 64: images/s, peak GPU memory, ratio;
#   3. a 2-epoch configs/fashion-mnist-resnet18.toml run with its kNN;
# and prints one table last (also $OUT/gpu-check.md).
#
# Here (with Rust): scripts/gpu-pack.sh builds the CUDA binary and packs it
# with the data into .gpu/ (ignored by git), then on the GPU machine
#   scripts/gpu-check.sh
# reads .gpu/. On the CPU path, to try the script end to end anywhere:
#   scripts/gpu-check.sh --device cpu --tiny --bin target/release/xtask
#
# Options: --device D (cuda), --tiny (few images and steps), --bin PATH
# (the xtask binary; default .gpu/xtask, unpacked from .gpu/xtask.xz),
# --data DIR (full Fashion-MNIST; default .gpu/data/fashion-mnist, else
# ../shared/data/fashion-mnist), --python PY (python3). Output in $OUT
# (default /tmp/gpu-check).
set -euo pipefail
cd "$(dirname "$0")/.."

device=cuda
tiny=0
bin=""
data=""
python=python3
out="${OUT:-/tmp/gpu-check}"
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --tiny) tiny=1; shift ;;
    --bin) bin="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    *) echo "gpu-check.sh: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done

if [ -z "$bin" ]; then
  if [ -f .gpu/xtask.xz ] && [ ! -x .gpu/xtask ]; then
    xz -dkc .gpu/xtask.xz > /tmp/byol-xtask && chmod +x /tmp/byol-xtask
    bin=/tmp/byol-xtask
  elif [ -x .gpu/xtask ]; then
    bin=.gpu/xtask
  else
    echo "gpu-check.sh: no binary: give --bin, or run scripts/gpu-pack.sh first" >&2
    exit 2
  fi
fi
if [ -z "$data" ]; then
  if [ -d .gpu/data/fashion-mnist ]; then data=.gpu/data/fashion-mnist; else data=../shared/data/fashion-mnist; fi
fi
[ -x "$bin" ] || { echo "gpu-check.sh: $bin is not an executable" >&2; exit 2; }
[ -d "$data" ] || { echo "gpu-check.sh: no data folder $data" >&2; exit 2; }
torch_device=cpu
case "$device" in cuda*) torch_device="${device/#cuda/cuda}"; [ "$torch_device" = cuda ] && torch_device=cuda:0 ;; esac
mkdir -p "$out"
rm -f "$out"/*.json "$out"/*.log "$out"/*.mem "$out"/*.rc
export NO_COLOR=1 PYTHONUNBUFFERED=1
# the time limits are for a GPU; the CPU path gets four times as long
slow=1
[ "$device" = cpu ] && slow=4

if [ "$tiny" = 1 ]; then
  r18_batch=8; r50_batch=2; steps=1; warmup=1
  fm=(--set train.max_steps=4 --set data.train_limit=512 --set data.test_limit=256
      --set eval.knn.bank_size=512 --set train.batch_size=64 --set eval.batch_size=128)
else
  r18_batch=256; r50_batch=64; steps=10; warmup=3
  fm=()
fi

gpu_used() {
  if command -v nvidia-smi > /dev/null 2>&1; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 2>/dev/null | head -1
  else
    echo ""
  fi
}

# measured NAME SECONDS CMD...: runs CMD for at most SECONDS with its output
# in $out/NAME.log, its exit status in $out/NAME.rc (124: out of time) and
# the GPU's peak memory above what was in use before it (MiB, sampled
# every 0.2 s; empty without nvidia-smi) in $out/NAME.mem. A failing part
# is recorded, and the script goes on.
measured() {
  local name="$1" limit=$(($2 * slow)); shift 2
  local base peak now
  base="$(gpu_used)"; peak=""
  echo "== $name (at most ${limit} s): $*" >&2
  timeout "$limit" "$@" > "$out/$name.log" 2>&1 &
  local pid=$!
  while kill -0 "$pid" 2> /dev/null; do
    now="$(gpu_used)"
    if [ -n "$now" ] && [ -n "$base" ]; then
      now=$((now - base))
      if [ -z "$peak" ] || [ "$now" -gt "$peak" ]; then peak="$now"; fi
    fi
    sleep 0.2
  done
  local rc=0
  wait "$pid" || rc=$?
  echo "$rc" > "$out/$name.rc"
  echo "$peak" > "$out/$name.mem"
  tail -3 "$out/$name.log" >&2
}

started=$(date +%s)
measured check-small 60 "$bin" check-step --device "$device" --model small
measured check-r18 60 "$bin" check-step --device "$device" --model resnet18-cifar --batch 8

has_precision=0
if "$bin" bench step --help 2> /dev/null | grep -q -- '--precision'; then has_precision=1; fi
for model in resnet18-cifar resnet50; do
  if [ "$model" = resnet50 ]; then batch=$r50_batch; torch_model=resnet50-224; else batch=$r18_batch; torch_model=resnet18-cifar; fi
  common=(--model "$model" --batch "$batch" --steps "$steps" --warmup "$warmup" --device "$device" --no-record)
  measured "ours-$model-f32" 80 "$bin" bench step "${common[@]}" --json "$out/ours-$model-f32.json"
  if [ "$has_precision" = 1 ]; then
    measured "ours-$model-bf16" 80 "$bin" bench step "${common[@]}" --precision bf16 --json "$out/ours-$model-bf16.json"
  else
    echo "this binary has no --precision: bf16 not built" > "$out/ours-$model-bf16.log"
    echo 3 > "$out/ours-$model-bf16.rc"
  fi
  tcommon=(bench/torch_byol_step.py --model "$torch_model" --batch "$batch" --steps "$steps" --warmup "$warmup" --device "$torch_device")
  measured "torch-$model-f32" 45 "$python" "${tcommon[@]}"
  measured "torch-$model-bf16" 45 "$python" "${tcommon[@]}" --amp bf16 --channels-last
done

rm -rf "$out/fm-r18"
measured fm-r18 150 "$bin" pretrain --device "$device" --config configs/fashion-mnist-resnet18.toml \
  --out "$out/fm-r18" --set "data.path=\"$data\"" --set train.epochs=2 --set train.warmup_epochs=0 \
  --set eval.every_epochs=1 "${fm[@]}"
cp "$out/fm-r18/summary.json" "$out/fm-r18-summary.json" 2> /dev/null || true

"$python" - "$out" "$device" "$tiny" "$(( $(date +%s) - started ))" << 'EOF'
import json, pathlib, re, sys

out, device, tiny, seconds = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1", sys.argv[4]

def text(name, ext):
    p = out / f"{name}.{ext}"
    return p.read_text().strip() if p.exists() else ""

def status(name):
    rc = text(name, "rc")
    if rc == "0":
        return "ok"
    if "not built" in text(name, "log"):
        return "not built in this binary"
    if rc == "124":
        return f"out of time ({out}/{name}.log)"
    return f"failed (exit {rc or '?'}; {out}/{name}.log)"

def mem(name):
    m = text(name, "mem")
    return f"{m} MiB" if m else "n/a"

def first_json(name):
    p = out / f"{name}.json"
    lines = p.read_text().splitlines() if p.exists() else text(name, "log").splitlines()
    for line in lines:
        if line.startswith("{"):
            return json.loads(line)
    return None

rows = ["| part | setting | byol-rs | PyTorch | byol-rs / PyTorch |", "|---|---|---|---|---|"]
for name, what in (("check-small", "small 28x28x1, batch 16"), ("check-r18", "resnet18-cifar 32x32x3, batch 8")):
    line = next((l for l in text(name, "log").splitlines() if l.startswith("check-step")), "")
    m = re.search(r"relative ([0-9.e+-]+)\); (\d+) gradients, largest relative difference ([0-9.e+-]+|inf)", line)
    figures = f"loss {m.group(1)}, worst of {m.group(2)} gradients {m.group(3)} (relative)" if m else "—"
    rows.append(f"| {device} vs cpu step | {what} | {figures} | — | {status(name)} |")
for model in ("resnet18-cifar", "resnet50"):
    for precision, peer in (("f32", "eager f32"), ("bf16", "autocast bf16, channels_last")):
        ours, theirs = first_json(f"ours-{model}-{precision}"), first_json(f"torch-{model}-{precision}")
        o = f"{ours['images_per_sec']:.1f} img/s, {mem(f'ours-{model}-{precision}')}" if ours else status(f"ours-{model}-{precision}")
        t = f"{theirs['images_per_sec']:.1f} img/s, {mem(f'torch-{model}-{precision}')}" if theirs else status(f"torch-{model}-{precision}")
        ratio = f"{ours['images_per_sec'] / theirs['images_per_sec']:.2f}" if ours and theirs else "—"
        setting = (ours or theirs or {}).get("name") or (ours or {}).get("config", {}).get("name", model)
        if ours and "config" in ours:
            setting = f"{ours['config']['name']}, batch {ours['config']['batch_size']}"
        rows.append(f"| step {precision} (PyTorch {peer}) | {setting} | {o} | {t} | {ratio} |")
summary = out / "fm-r18-summary.json"
if summary.exists():
    s = json.loads(summary.read_text())
    knn = s.get("knn_trained") or {}
    raw = s.get("knn_raw_pixels") or {}
    lin = s.get("online_linear_top1")
    fig = (f"kNN top-1 {100 * knn.get('top1', 0):.2f}% (raw pixels {100 * raw.get('top1', 0):.2f}%), "
           f"online linear {100 * lin:.2f}%, " if lin is not None else f"kNN top-1 {100 * knn.get('top1', 0):.2f}%, ")
    fig += f"{s['steps']} steps in {s['train_seconds']:.0f} s, {mem('fm-r18')}"
else:
    fig = status("fm-r18")
what = "4 steps of 64 on 512 images" if tiny else "2 epochs of batch 256, LARS"
rows.append(f"| fashion-mnist-resnet18 | {what} | {fig} | — | {status('fm-r18')} |")
title = f"gpu-check on {device}{' (tiny sizes)' if tiny else ''}, {seconds} s; GPU memory: peak nvidia-smi memory.used above the idle level"
table = "\n".join([title, ""] + rows) + "\n"
(out / "gpu-check.md").write_text(table)
print()
print(table)
EOF
