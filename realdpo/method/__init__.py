"""The method (DESIGN §1): losses as plain functions, the reference model, and one batched RealDPO step."""
