"""Synthetic multi-view humans (`synth`, `render`, `hgm datagen`), the render-layout reader (`reader`)
and its training-resolution cache (`cache`)."""
