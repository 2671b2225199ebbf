"""The online path: export, ScaNN retrieval, the recommender, re-ranking, feedback and the HTTP service.

Never imports training code (``vistaste.towers.training``), the bench or the apps; the HTTP process
loads only what answering a request needs."""
