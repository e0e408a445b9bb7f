-- Operators look one object up by name across namespaces (find_by_name).
CREATE INDEX objects_by_name ON objects (kind, name);
