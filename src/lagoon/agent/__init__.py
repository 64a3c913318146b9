"""lagoon.agent: the code-as-action agent, the same in production and inside RL.

    sandbox     bubblewrap sandboxes: never host root, no capabilities, no network, read-only system, private
                workspace, limits (cgroups), timeouts
    seccomp     the sandbox's system-call filter (classic BPF, per ABI)
    tasks       the on-disk task layout and task sets (pybugs, arith-code, directories)
    grading     exact answers; hidden tests in a fresh sandbox with fail-to-pass / pass-to-pass semantics
    harness     run_episode: the turn loop, budgets, exit reasons, per-step trajectories
    clients     OpenAI-compatible chat endpoints; lagoon serve in token-in/token-out mode
    tito        exact token contexts across turns and the prefix property
    trajectory  the JSON-lines schema and Episode / Sample for RL
    arith       the arith-code generator and supervised warm-up transcripts
    commands    lagoon agent run | eval | replay | tasks
"""
