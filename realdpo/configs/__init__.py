"""One typed config dataclass per command; every field documents itself (`realbase.fields.field`)."""
