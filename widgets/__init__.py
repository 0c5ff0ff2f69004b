"""JupyterLab widgets for e4e-lab (ipywidgets 8 + ipycanvas).

Each widget is a small class: its state is plain attributes, its event handlers are
methods (callable from tests without a browser), and ``.widget`` is what to display
(``display(obj)`` works too). The method lives in ``e4e_lab``; these only draw it.

- :class:`BoxDrawer`, :class:`PairBoxDrawer`: draw / move / resize boxes, save the JSON
- :class:`MaskEditor`, :class:`PairMaskEditor`: SAM-HQ masks with clicks, at layer grids
- :class:`CorrespondenceExplorer`: click a target pixel, see its match and heatmap
- :class:`AttentionViewer`: attention of a query pixel per layer / step / head / branch
- :class:`TransferPanel`: knobs, Run / Stop in a background thread, live previews
- :class:`RunGallery`: runs with their parameters, side by side, export
- :class:`MultiBoxDrawer`: paired target / reference boxes for multi-object transfer
- :class:`ComparisonGrid`: Eye-for-an-eye modes and baselines on one pair, scored
- :class:`PartExplorer`: joint DIFT parts of a pair and their confusion matrix
- :class:`SweepPanel`: a grid of runs over one or two parameters, as a contact sheet
- :class:`ImageSource`: upload an image or give its path (used by the drawers and panel)
- ``widgets.figures``: static matplotlib figures for the notebooks
"""

from .attention import AttentionViewer
from .boxes import BoxDrawer, ExtraBox, PairBoxDrawer
from .common import banner_html, banner_widget, has_banner, open_lab, show_banner, widget_text
from .compare import ComparisonGrid
from .correspondence import CorrespondenceExplorer
from .gallery import RunGallery, RunRecord
from .image_source import ImageSource
from .masks import MaskEditor, PairMaskEditor
from .pairs import MultiBoxDrawer, ObjectPair
from .parts import PartExplorer
from .sweep import SweepPanel
from .transfer_panel import TransferPanel

__all__ = ["AttentionViewer", "BoxDrawer", "ComparisonGrid", "CorrespondenceExplorer",
           "ExtraBox", "ImageSource", "MaskEditor", "MultiBoxDrawer", "ObjectPair", "PairBoxDrawer",
           "PairMaskEditor", "PartExplorer", "RunGallery", "RunRecord", "SweepPanel", "TransferPanel",
           "banner_html", "banner_widget", "has_banner", "open_lab", "show_banner",
           "widget_text"]
