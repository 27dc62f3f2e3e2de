"""A job runner in a process of its own (so a test can SIGKILL it): runs job JOB_ID of the stores under HOME.

Usage: run_job.py HOME JOB_ID
"""

import sys

from capstan.resources.local import LocalAdmission
from capstan.resources.machine import Capacity
from capstan.services import Services
from capstan.settings import Settings

settings = Settings.for_home(sys.argv[1])
admission = LocalAdmission(Capacity(cpu=8, memory=16 * 2**30))
services = Services.open(settings, admission=admission)
runner = services.job_runner()
runner.poll_s = 0.05
print(runner.run(sys.argv[2]).state, flush=True)
