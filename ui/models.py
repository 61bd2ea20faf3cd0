"""Model choice shared by all pages of a session, and the process-wide model cache.

A model loads once per process (`st.cache_resource`) and is shared by every session of the lab
demo; its `LoadedModel.lock` serialises use. The choice lives in `st.session_state` so it follows
the user from page to page. The sidebar never shows a model that is not the one in use: a failed load
restores the previous working choice *in the picker too* (and says why), and the picker marks which of
the listed models are present on this machine.
"""

from __future__ import annotations

import streamlit as st

from engine.core import device, embedded, loading, model, registry
from engine.core.embedder import EMBEDDED_EMBEDDER, load_embedder
from engine.core.errors import LabError

CHOICE_KEY = "lab_model_choice"  # (name, quantization) of the model in use
ERROR_KEY = "lab_model_error"
STATUS_SLOT_KEY = "_lab_model_status_slot"  # the sidebar's load-state element of the current run
RESET_KEY = "_lab_model_reset_picker"  # a failed load: put the picker back on the working choice next run
CUSTOM = "Other (HF id or local folder)..."
_LOADED_IN_PROCESS: set[tuple[str, str]] = set()  # choices this process holds (for the load state)


@st.cache_resource(max_entries=3, show_spinner=False)
def _load_cached(name: str, quantization: str) -> model.LoadedModel:
    return loading.load_model(name, quantization=quantization)


@st.cache_resource(max_entries=2, show_spinner=False)
def _load_embedder_cached(name: str):
    return load_embedder(name)


def current_choice() -> tuple[str, str]:
    return st.session_state.get(CHOICE_KEY, (embedded.EMBEDDED_LM, "none"))


def is_loaded(choice: tuple[str, str]) -> bool:
    """Whether this process already holds the model (without loading it)."""
    return choice in _LOADED_IN_PROCESS


def get_model() -> model.LoadedModel | None:
    """The session's model, loading it once per process; None (and a message) when it cannot load.

    On failure the previous working choice is restored, so the page keeps working with it.
    """
    choice = current_choice()
    try:
        with st.spinner(f"Loading {choice[0]} (first time in this process: up to a minute)..."):
            lm = _load_cached(*choice)
    except LabError as err:
        previous = st.session_state.get("lab_last_good_choice")
        if previous and previous != choice:
            # the sidebar was drawn with the failed choice: go back to the working one, picker included
            st.session_state[ERROR_KEY] = f"{err} Keeping {previous[0]}."
            st.session_state[CHOICE_KEY] = previous
            st.session_state[RESET_KEY] = True
            st.rerun()
        st.session_state[ERROR_KEY] = str(err)
        st.error(str(err))
        return None
    st.session_state["lab_last_good_choice"] = choice
    _LOADED_IN_PROCESS.add(choice)
    slot = st.session_state.get(STATUS_SLOT_KEY)
    if slot is not None:  # the sidebar rendered "not loaded yet" earlier in this run: update it
        _show_loaded(slot, lm)
    st.session_state.pop(ERROR_KEY, None)
    return lm


def get_embedder(name: str = EMBEDDED_EMBEDDER):
    """The sentence embedder (MiniLM by default), loaded once per process."""
    try:
        with st.spinner(f"Loading sentence embedder {name}..."):
            return _load_embedder_cached(name)
    except LabError as err:
        st.error(str(err))
        return None


def _apply_choice() -> None:
    picked = st.session_state["lab_model_picker"]
    name = st.session_state.get("lab_model_custom", "").strip() if picked == CUSTOM else picked
    if not name:
        return
    quant = st.session_state.get("lab_model_quant", "none")
    st.session_state[CHOICE_KEY] = (name, quant)


@st.cache_data(ttl=60, show_spinner=False)
def _local_states() -> dict[str, str]:
    """name -> 'cached' / 'in HF cache' / 'not local' / ... for the known models (checked once a minute)."""
    return {row["name"]: row["state"] for row in registry.list_models()}


def _label(option: str) -> str:
    if option == CUSTOM:
        return option
    if option == embedded.EMBEDDED_LM:  # ships with the lab (converted on its first load)
        return option
    here = _local_states().get(option, "") != "not local"
    return option if here else f"{option} (not on this machine)"


def _reset_picker() -> None:
    """Before the picker exists in this run: make it show the choice in use (after a failed load)."""
    if st.session_state.pop(RESET_KEY, False):
        name, quant = current_choice()
        if name in registry.KNOWN_MODELS:
            st.session_state["lab_model_picker"] = name
        else:
            st.session_state["lab_model_picker"] = CUSTOM
            st.session_state["lab_model_custom"] = name
        st.session_state["lab_model_quant"] = quant


def render_sidebar() -> None:
    """Sidebar model picker and load state; call it at the top of every page."""
    _reset_picker()
    name, quant = current_choice()
    options = list(registry.KNOWN_MODELS) + [CUSTOM]
    with st.sidebar:
        st.subheader("Model")
        index = options.index(name) if name in options else options.index(CUSTOM)
        st.selectbox(
            "Language model",
            options,
            index=index,
            key="lab_model_picker",
            on_change=_apply_choice,
            format_func=_label,
            help="The embedded Gemma 3 270M works offline. Others load from a local folder or the Hugging Face "
            "cache; those marked 'not on this machine' are not there.",
        )
        if st.session_state.get("lab_model_picker") == CUSTOM:
            st.text_input(
                "HF id or local folder",
                value="" if name in registry.KNOWN_MODELS else name,
                key="lab_model_custom",
                on_change=_apply_choice,
                placeholder="google/gemma-3-1b-it or /path/to/model",
            )
        reason = device.quantization_unavailable_reason()
        st.radio(
            "Precision",
            model.QUANTIZATIONS,
            index=model.QUANTIZATIONS.index(quant) if reason is None else 0,
            key="lab_model_quant",
            on_change=_apply_choice,
            horizontal=True,
            disabled=reason is not None,
            help=reason or "bitsandbytes 8-bit / 4-bit weights on the GPU.",
            format_func=lambda q: {"none": "bf16/fp32", "8bit": "8-bit", "4bit": "4-bit"}[q],
        )
        choice = current_choice()
        if ERROR_KEY in st.session_state:
            st.error(f"Last load failed: {st.session_state[ERROR_KEY]}", icon=":material/error:")
        slot = st.empty()
        st.session_state[STATUS_SLOT_KEY] = slot
        if is_loaded(choice):
            st.session_state["lab_last_good_choice"] = choice  # in use here, though another session loaded it
            _show_loaded(slot, _load_cached(*choice))
        else:
            with slot.container():  # replaced whole by the "Loaded" note once a page loads the model
                st.info(
                    f"{choice[0]}: not loaded yet; it loads when a page needs it.", icon=":material/hourglass_empty:"
                )
                load_now = st.button("Load now", key="lab_model_load_now")
            if load_now and get_model() is not None:
                st.rerun()


def _show_loaded(slot, lm: model.LoadedModel) -> None:
    slot.success(f"Loaded: {lm.describe()}", icon=":material/check_circle:")
