-- Move on the given waiting jobs that nothing holds any more (see pgqueue_workflow_release in
-- sql/pgqueue/0006): run after workflow_link, in its own statement so the function sees the rows
-- the link wrote.
SELECT {workflow_release}(%(ids)s::bigint[])
