"""One typed config dataclass per command; every field documents itself (`realaction.fields.field`)."""
