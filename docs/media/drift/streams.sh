cd /work/main
[ -d runs/drift/val ] || .venv/bin/omniforcing data synth --out runs/drift/val --clips 64 --seconds 2 --seed 1 --max-objects 1 --fixed-size true --background-sound false > runs/drift/synth.log 2>&1
seen=("an orange circle bounces; the circle rings" "a cyan diamond bounces; the diamond rattles" "a green square bounces; the square thuds" "a red triangle bounces; the triangle clicks")
unseen=("a golden star glides in circles; the star hums softly" "two silver moons drift apart; a bell tolls" "a wooden boat rocks on waves; water splashes" "a purple cloud rains; thunder rumbles")
for policy in absolute relative; do
  for kind in seen unseen; do
    mkdir -p runs/drift/$policy-$kind
    for i in 0 1 2 3; do
      if [ $kind = seen ]; then prompt="${seen[$i]}"; else prompt="${unseen[$i]}"; fi
      [ -f runs/drift/$policy-$kind/stream$i.mp4 ] || .venv/bin/omniforcing generate --checkpoint student --prompt "$prompt" --seconds 120 --out runs/drift/$policy-$kind/stream$i.mp4 --window 10 --prefix-position $policy --threads 1 --seed $i > runs/drift/$policy-$kind-$i.log 2>&1
    done
  done
done
echo done > runs/drift/DONE
