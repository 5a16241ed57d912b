"""The governance gate: policy documents, fitting, the gate, signal comparison, the audit log."""
