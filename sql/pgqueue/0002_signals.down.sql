-- Undo pgqueue 0002: queue control goes back to having no table (nodes of this version need it).
DROP TABLE IF EXISTS pgqueue_signals;
