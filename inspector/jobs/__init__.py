"""The jobs that record results in the store, all through one function (record.explain_and_record_many):
`inspector explain`, resumable audits (audit) on this machine or on Ray workers (ray_audit, ray_reaper),
merges of shard stores (merge), the folder-watching service (watch); the files each result gets
(artifacts) and the views of the store (views: results.csv, results.jsonl, report.html)."""
