"""TEMPORARY re-export while the move to `capstan.resources` lands; removed before commit of issue 9 work."""

from capstan.resources.admission import PREEMPTED, Admission, Lease, Rejected, ResourceRequest, Verdict, Waiting
from capstan.resources.local import LocalAdmission
from capstan.resources.machine import Capacity, detect_gpus, gpu_model_label

__all__ = ["PREEMPTED", "Admission", "Capacity", "Lease", "LocalAdmission", "Rejected", "ResourceRequest", "Verdict",
           "Waiting", "detect_gpus", "gpu_model_label"]
