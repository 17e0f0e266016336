import time
def test_smoke(filled_store, tmp_path):
    from kit.results.store import ResultsStore
    from kit.results.report import write_store_report
    from kit.results.compare import compare
    with ResultsStore(filled_store.path) as s:
        t=time.time(); p = write_store_report(s, "/tmp/results_smoke"); print("report", time.time()-t, p)
        c = compare(s, str(filled_store.run_id), str(filled_store.second_run_id))
        for r in c.rows: print(r.key, r.p50_ratio, r.latency)
        c = compare(s, "local", "pi5-emulated")
        for r in c.rows: print(r.key, r.p50_ratio, r.latency.verdict)
        c = compare(s, "tiny-fp32-pte", "tiny-int8-pte")
        for r in c.rows: print(r.key, r.p50_ratio, r.latency.verdict)
