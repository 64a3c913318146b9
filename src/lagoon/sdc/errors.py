"""What an SDC check ends a job with: one line naming the rank(s) and host(s), and a distinct exit code.

A scheduler can act on the exit code without parsing text: 91 means a node computed wrong results and
should be excluded (or sent to diagnostics); 93 and 94 mean a peer hung or vanished.

    91  EXIT_CORRUPTION        replicas disagree and the policy is to fail, or the fault is persistent
    92  EXIT_RETRIES_EXHAUSTED rolled back `sdc.max_rollbacks` times and corruption came back
    93  EXIT_HUNG              a rank made no progress within `sdc.timeout_s` (it is named)
    94  EXIT_PEER_LOST         a rank died or stopped answering (it is named)
"""

from __future__ import annotations

from lagoon.errors import LagoonError

EXIT_CORRUPTION = 91
EXIT_RETRIES_EXHAUSTED = 92
EXIT_HUNG = 93
EXIT_PEER_LOST = 94


class SDCError(LagoonError):
    """Silent data corruption was found and the policy (or its nature) says stop.

    `ranks` / `hosts`: the faulty (or suspect) global ranks and their hosts; `parameters`: what differed.
    """

    exit_code = EXIT_CORRUPTION

    def __init__(self, message: str, ranks: list[int] | None = None, hosts: list[str] | None = None,
                 parameters: list[str] | None = None, step: int | None = None):
        super().__init__(message)
        self.ranks = list(ranks or [])
        self.hosts = list(hosts or [])
        self.parameters = list(parameters or [])
        self.step = step


class SDCRetriesExhausted(SDCError):
    exit_code = EXIT_RETRIES_EXHAUSTED


class SDCHung(SDCError):
    exit_code = EXIT_HUNG


class SDCPeerLost(SDCError):
    exit_code = EXIT_PEER_LOST
