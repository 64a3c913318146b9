"""The main job: ``lagoon demo CONFIG --run-dir DIR`` runs the whole pipeline on the embedded default.

data build → AutoMixer (a small sweep) → pretraining with distributed Muon and SDC checks under torchrun →
Hugging Face export → asynchronous RL on arith-code → evaluation → one HTML report. Each stage lives in
`lagoon.demo.stages`; `lagoon.demo.pipeline.run_pipeline` runs them resumably.
"""
