"""`latentlab serve`: a local web page for the whole loop (generate, vary, upscale, img2img, inpaint, history),
on FastAPI and uvicorn, the optional extra `serve`. app.py (the API), jobs.py (the queue), studio.py (what a job
does), library.py (what may be read and written), static/ (the page)."""
