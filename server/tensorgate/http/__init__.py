"""The KServe v2 HTTP/REST front end."""
