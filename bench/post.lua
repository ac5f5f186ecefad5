-- wrk script for bench/run.sh: the POST every request sends.
-- The body is a GitHub-like push event of exactly 408 bytes (run.sh checks
-- the length before measuring and sends the same bytes with curl once).
wrk.method = "POST"
wrk.body = [[{"ref":"refs/heads/main","before":"6113728f27ae82c7b1a177c8d03f9e96e0adf246","after":"59b20b8d5c6ff8d09518454d4dd8b7a30f095ab5","repository":{"id":186853002,"full_name":"octo-org/webhook-demo","private":false},"pusher":{"name":"octocat","email":"octocat@github.com"},"sender":{"login":"octocat","id":583231},"forced":false,"head_commit":{"message":"Fix the webhook retry","timestamp":"2026-11-23T10:15:42Z"}}]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-token"
