"""The method (docs/method.md): losses as plain functions, the reference model, and one batched RealDPO step."""
