"""Background jobs: requests kept in the store and run later by any kaixu process sharing it
(`runner.JobRunner`; the rows: kaixu/store/jobs.py). docs/jobs.md."""
