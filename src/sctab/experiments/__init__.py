"""The paper's experiments (Fig. 2, Supp. Tables 2, 3, 7): points, sweeps on Ray Tune, summaries."""
