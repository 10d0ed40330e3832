"""Synthetic multi-view humans (`synth`, `render`, `hgm datagen`) and the render-layout reader (`reader`)."""
