-- The second statement of a bulk insert by COPY (see insert.py): the rows, in input order, with
-- the ids reserved by reserve_job_ids.sql. The column list names only the columns that some job
-- in the batch sets; the others take the table's defaults (state 'available', scheduled_at and
-- inserted_at now(), empty meta and tags), which is what those jobs would be given anyway, and
-- the server is spared parsing a value per row for each.
COPY {jobs} ({columns}) FROM STDIN
