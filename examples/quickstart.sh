#!/usr/bin/env bash
# Set up and run the whole loop on embedded defaults: SQLite registry, in-process executor, the built-in ViT and
# generated images. Everything goes under $SAEV_OPS_HOME (default ./.quickstart).
#   bash examples/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# the built-in ViT needs no transformers: only the plot extra (matplotlib) for the Pareto plot and the report
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile -e '.[plot,serve]' 'torch==2.13.0'
export SAEV_OPS_HOME="${SAEV_OPS_HOME:-$PWD/.quickstart}"
unset SAEV_OPS_DB_URL
S="$VENV/bin/saev-ops"
set -x
"$S" images generate "$SAEV_OPS_HOME/images" --n 64 --size 64
"$S" images generate "$SAEV_OPS_HOME/images-val" --n 16 --size 64 --seed 1   # held-out images
"$S" datasets record --name quickstart --images "$SAEV_OPS_HOME/images" --model builtin:small --layers 3,5
"$S" datasets record --name quickstart-val --images "$SAEV_OPS_HOME/images-val" --model builtin:small --layers 3,5
"$S" datasets verify quickstart --full
"$S" sweep submit examples/grid.yaml --dry-run
"$S" sweep submit examples/grid.yaml --executor debug
"$S" sweep list
"$S" runs list --sweep quickstart --where "arch=topk" --where "d_sae>=512" --sort val/nmse --columns arch,d_sae,k,lr,nmse,val/nmse,val/l0
"$S" sql "SELECT run_id, arch, d_sae, val_nmse, val_l0, val_unfired_frac FROM run_table WHERE sweep = 'quickstart' ORDER BY val_nmse LIMIT 3"
# "best" as a researcher picks it: the lowest held-out NMSE among runs sparse enough to read (val/l0 <= 32)
BEST="$("$S" runs list --sweep quickstart --where "val/l0<=32" --sort val/nmse --limit 1 --format csv | sed -n 2p | cut -d, -f1)"
echo "best: run $BEST, the lowest val/nmse among the runs with val/l0 <= 32"
"$S" runs show "$BEST"
# seed stability: one TopK config trained from two seeds (compare's init_* columns show how alike their starts were)
TWINS="$("$S" runs list --sweep quickstart --where arch=topk --where d_sae=512 --where k=16 --where "lr=0.001" --format csv | sed -n '2,3p' | cut -d, -f1)"
"$S" runs compare $TWINS
echo "(these runs train ~100 steps: their decoders are still close to their random starts, the init_* columns, so two"
echo " seeds matching or not says little here; seed stability needs runs trained to convergence)"
"$S" eval quickstart --dataset quickstart-val --n-images 16
"$S" infer quickstart --dataset quickstart
OUT="$("$S" sql "SELECT output_id FROM inference_lineage ORDER BY output_id LIMIT 1" --format csv | sed -n 2p)"
"$S" latents stats "$OUT"
"$S" latents top "$OUT" 0 -n 5
"$S" lineage sweep:quickstart
"$S" runs pareto --sweep quickstart --out "$SAEV_OPS_HOME/pareto.png"
"$S" report quickstart --out "$SAEV_OPS_HOME/report"
set +x
cat <<EOF

Done. Open $SAEV_OPS_HOME/report/index.html in a browser.
To go on with the quickstart's registry ($SAEV_OPS_HOME/registry.sqlite) in this shell:

  source $PWD/$VENV/bin/activate
  export SAEV_OPS_HOME=$SAEV_OPS_HOME
  saev-ops runs list --sweep quickstart --sort nmse
  saev-ops serve          # then open http://127.0.0.1:8000/ : sweeps, runs, latents and images in a browser
EOF
